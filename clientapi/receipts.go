package clientapi

import "github.com/gorilla/mux"

func (a *API) receiptRoutes(r *mux.Router) {}
